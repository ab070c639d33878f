"""`python -m metering --run-dir RUN --node NODE --url URL`: the meters of a run
(metering/run.py)."""

from metering.run import main

main()
