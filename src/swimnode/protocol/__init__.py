"""The SWIM protocol without I/O: membership rules, probing, suspicion, dissemination,
anti-entropy, queries and the wire codec. Nothing here imports Trio or sockets (a test
proves it); drivers in other packages move the bytes and keep the time."""
