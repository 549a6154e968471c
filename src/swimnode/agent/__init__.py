"""The agent: command line, settings, the long-running process, its RPC server and
the client commands. Client commands import nothing that loads Trio, so this package
imports nothing itself."""
