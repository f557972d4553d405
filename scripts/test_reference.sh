#!/usr/bin/env bash
# Run tests/test_models_reference.py in the reference environment (scripts/setup_reference.sh),
# and fail unless every one of its tests ran: a missing torchvision or timm is an error there
# (PS_TRAINER_REFERENCE_REQUIRED=1), and a skip for any other reason fails this script.
set -euo pipefail
venv=${1:-.venv-ref}
shift || true
report=$(mktemp --suffix .xml)
trap 'rm -f "$report"' EXIT
PS_TRAINER_REFERENCE_REQUIRED=1 "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider \
  tests/test_models_reference.py --junitxml "$report" "$@"
"$venv/bin/python" - "$report" <<'PY'
import sys
import xml.etree.ElementTree as ET

suites = ET.parse(sys.argv[1]).getroot().iter("testsuite")
tests, skipped = map(sum, zip(*((int(s.get("tests")), int(s.get("skipped"))) for s in suites)))
if skipped or not tests:
    sys.exit(f"make test-reference: {skipped} of {tests} reference tests skipped; all must run")
print(f"make test-reference: all {tests} reference tests ran")
PY
