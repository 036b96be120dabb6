#!/usr/bin/env bash
# Puts the real Fashion-MNIST IDX files (60k/10k, Debian package dataset-fashion-mnist) where
# SPSearch looks for them: /usr/share/datasets/fashion-mnist when we may install packages,
# else unpacked into the project's data cache (data/fashion-mnist). Nothing to do if present.
set -euo pipefail
cd "$(dirname "$0")/.."
SYSTEM_DIR=/usr/share/datasets/fashion-mnist
CACHE_DIR=${SPSEARCH_DATA:-data}/fashion-mnist
have() { [ -f "$1/train-images-idx3-ubyte.gz" ] && [ -f "$1/t10k-labels-idx1-ubyte.gz" ]; }
if have "$SYSTEM_DIR" || have "$CACHE_DIR"; then exit 0; fi
if ! command -v apt-get >/dev/null; then
    echo "fetch_fashion_mnist: no apt-get here; put the four Fashion-MNIST *.gz IDX files in $CACHE_DIR" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    echo "fetch_fashion_mnist: apt-get install dataset-fashion-mnist"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; })
    have "$SYSTEM_DIR" && exit 0
fi
echo "fetch_fashion_mnist: apt-get download dataset-fashion-mnist -> $CACHE_DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null)
dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"
mkdir -p "$CACHE_DIR"
cp "$tmp"/root/usr/share/datasets/fashion-mnist/*.gz "$CACHE_DIR"/
have "$CACHE_DIR"
