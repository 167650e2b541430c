#!/usr/bin/env bash
# The soak test for SECS seconds (default 600) against a release build: mixed HTTP/1.1 + HTTP/2
# load with certificate rotations, configuration reloads and a flapping replica; prints requests,
# errors, and RSS / open descriptors at start and end. `cargo test` runs it for 60 s.
#   scripts/soak.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
SCOREGATE_SOAK_SECS="${1:-600}" exec cargo test --release --test soak -- --nocapture
