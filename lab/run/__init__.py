"""`lab run`: the real engine against the venues over loopback, through a simulated network.
runner drives one experiment, feeds picks its market data, sockets rebuilds the loopback
capture from the sockets' own stamps, taps turns that capture into the hardware-style pcapng
that carries runinfo in its section comment, and implied measures a run's tick-to-trade
stage by stage."""
from lab.run.implied import measure_run
from lab.run.runinfo import read_run_info
from lab.run.runner import CAPTURES, MODELS, REAL_STRATEGIES, RunOptions, run

__all__ = ["CAPTURES", "MODELS", "REAL_STRATEGIES", "RunOptions", "measure_run", "read_run_info", "run"]
