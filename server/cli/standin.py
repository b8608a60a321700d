"""``key4u-mcp stand-in``: the offline stand-in of the model API, served until Ctrl-C."""

from __future__ import annotations

import argparse
import time

from server.config import Settings
from server.standin import StandIn


def run(settings: Settings, args: argparse.Namespace) -> int:
    upstream = StandIn(host=args.standin_host, port=args.standin_port, api_key=args.api_key).start()
    print(
        f"Offline stand-in of /v1/responses and /v1/chat/completions at {upstream.base_url} (Ctrl-C to stop)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        upstream.stop()
    return 0
