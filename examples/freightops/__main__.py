"""Run FreightOps: ``python -m examples.freightops [--host H] [--port P]``.

Host and port also come from ``FREIGHTOPS_HOST`` / ``FREIGHTOPS_PORT``;
the default is http://127.0.0.1:8000 on the embedded default (no Redis, no
PostgreSQL needed).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m examples.freightops", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("FREIGHTOPS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FREIGHTOPS_PORT", "8000")))
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("FreightOps needs uvicorn: pip install 'freightscale[server]'", file=sys.stderr)
        return 1
    base = f"http://{args.host}:{args.port}"
    # The embedded default seeds demo data on its first start and serves
    # plain-HTTP cookies; production sets these variables itself.
    os.environ.setdefault("FREIGHTOPS_SEED_ON_STARTUP", "true")
    os.environ.setdefault("FREIGHTSCALE_ENVIRONMENT", "development")
    print(f"FreightOps on {base}  (try {base}/api/v1/status, {base}/healthz, {base}/readyz)")
    print(
        "Demo logins (password 'freightops'): admin@acme.example, dispatcher@acme.example, "
        "driver@acme.example, accountant@acme.example, viewer@globex.example\n"
        f"  curl -s {base}/api/auth/login "
        """-d '{"email":"dispatcher@acme.example","password":"freightops"}'"""
    )
    sys.stdout.flush()
    from examples.freightops.app import app

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
