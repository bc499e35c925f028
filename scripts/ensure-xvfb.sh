#!/usr/bin/env bash
# Make sure a virtual X screen (Xvfb) is available for the napari tests.
set -euo pipefail
if command -v xvfb-run >/dev/null 2>&1; then
    exit 0
fi
packages="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libgl1 libegl1 \
libgl1-mesa-dri libglib2.0-0 libfontconfig1 libxkbcommon-x11-0 libx11-xcb1 libxcb-image0 libxcb-randr0 \
libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libdbus-1-3"
if [ "$(id -u)" -ne 0 ]; then
    echo "xvfb-run is missing. Install it once with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends $packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $packages >/dev/null
