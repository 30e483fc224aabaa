"""The pipeline over several seeds as DVC experiments, aggregated (failmap.study).

    python scripts/seed_study.py --name context --seeds 0 1 2 3 4
    python scripts/seed_study.py --name colour -S world.planted_attribute=colour
    python scripts/seed_study.py --name context --aggregate-only   # re-read finished experiments
"""
import sys

from failmap.study import main

if __name__ == "__main__":
    sys.exit(main())
