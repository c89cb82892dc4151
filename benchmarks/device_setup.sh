# Sourced by the device_*.sh scripts on the GPU machine (see ../shared/DEVICE.md): unpack the carried EGL
# libraries (.gl), install the carried wheels (.whl) and this package into /tmp, point EGL at NVIDIA's
# vendor file, and make $OUT. Run from the repository root.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/emb . || exit 1
export PYTHONPATH=/tmp/emb:/tmp/site MUJOCO_GL=egl HF_HUB_OFFLINE=1
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
