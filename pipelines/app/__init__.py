"""The tools around the job: the `rillet` command, the emulators, demo, replay-eval, evaluate,
the simulator and publisher, deploy and the capacity plan. Nothing below imports them."""
