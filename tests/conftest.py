"""Test set-up: headless rendering and an offline Hugging Face hub for every test."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
