"""Audit the locked dependencies (requirements.lock) for known vulnerabilities with pip-audit.

    python tools/audit_deps.py            # CI runs this (installs pip-audit into .venv-audit)

Fails (exit 1) when a locked package has a known vulnerability with a fixed version available.
When the advisory service cannot be reached (this workplace's network serves PyPI's package
index but not its JSON API, so pip-audit skips every package), it says so loudly and exits 0:
an audit that could not run is reported as such, never as "no vulnerabilities".
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-audit"


def pip_audit() -> Path:
    exe = VENV / "bin" / "pip-audit"
    if not exe.exists():
        venv.create(VENV, with_pip=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "pip-audit"], check=True)
    return exe


def main() -> int:
    result = subprocess.run(
        [str(pip_audit()), "-r", str(ROOT / "requirements.lock"), "-f", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"dependency audit failed to run:\n{result.stderr[-2000:]}", file=sys.stderr)
        return 1
    deps = report.get("dependencies", [])
    audited = [d for d in deps if "skip_reason" not in d]
    fixable = [
        (d["name"], d["version"], v["id"], v.get("fix_versions"))
        for d in audited
        for v in d.get("vulns", [])
        if v.get("fix_versions")
    ]
    for name, version, vuln, fixes in fixable:
        print(f"VULNERABLE {name}=={version}: {vuln}, fixed in {', '.join(fixes)}")
    if not audited:
        print(
            f"WARNING: dependency audit could not run: all {len(deps)} packages were skipped "
            f"(the vulnerability service is unreachable from this machine)",
            file=sys.stderr,
        )
        return 0
    print(
        f"audited {len(audited)} of {len(deps)} locked packages: "
        f"{len(fixable)} known vulnerabilities with a fix"
    )
    return 1 if fixable else 0


if __name__ == "__main__":
    sys.exit(main())
