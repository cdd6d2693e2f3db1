"""Container health probe: exit 0 when ``http://.../health`` (the first argument, or the
``PGL_HEALTH_URL`` environment variable) answers 2xx within five seconds, else 1.

Used by the image's HEALTHCHECK and by docker-compose.yml's health checks (the image has no curl).
With no URL there is nothing to probe: exit 0. Standard library only; not part of the package.
"""

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("PGL_HEALTH_URL", "")
    if not url:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a local health URL
            return 0 if 200 <= resp.status < 300 else 1
    except Exception as err:  # noqa: BLE001 - any failure is "unhealthy"
        print(f"{url}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
