"""`erl-mega plan`: per-GPU memory, step time and feasible TP x PP x DP layouts, on paper, before renting GPUs."""
