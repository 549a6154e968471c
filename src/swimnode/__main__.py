"""`python -m swimnode ...`"""

import sys

from .lazyimport import defer_modules

# Imported by Trio (TLS, DTLS) and the standard library (archives) for what the
# commands never use, and backed by shared libraries: an idle agent is ~5 MiB
# smaller without them (docs/agent.md, "Footprint"). `prometheus_client`'s
# `__init__` loads its HTTP exposition, which `agent --metrics` does not use
# (docs/metrics.md, "Footprint").
defer_modules("ssl", "hmac", "hashlib", "bz2", "lzma", "prometheus_client")

from .agent.cli import main  # noqa: E402  (after the deferral, which must come first)

sys.exit(main())
