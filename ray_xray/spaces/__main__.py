"""``python -m ray_xray.spaces``: see ``ray_xray.spaces.cli``."""

from ray_xray.cli import run
from ray_xray.spaces.cli import main

run(main)
