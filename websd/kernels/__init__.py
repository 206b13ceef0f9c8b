"""Hand-written TensorIR kernels of our own, one per file, each with the plain (target-independent)
form the Relax passes emit and the scheduled GPU form the apply_db stage swaps in."""
