"""``python -m helpers.synthetic [--force] [--seed N] [--smoke] [--check]``: build quick mode's world."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..course import paths
from .story import story_numbers
from .world import ensure_built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.synthetic", description="Build quick mode's synthetic face world and miniature VGG-Face.")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the whole world (default: COURSE_WORLD_SEED or 0)")
    parser.add_argument("--smoke", action="store_true", help="the tiny world SMOKE runs use (its own folders; seconds)")
    parser.add_argument("--check", action="store_true", help="also measure the story (story_numbers()) and print it")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ[paths.ENV_SMOKE] = "1"
    manifest = ensure_built(force=args.force, seed=args.seed, progress=True)
    print(json.dumps({k: manifest[k] for k in ("target", "pretrain", "seconds")}, indent=2))
    if args.check:
        print(json.dumps(story_numbers(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
