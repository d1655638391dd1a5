"""Solutions to the course's exercises, one module per notebook (nb02.py for 02_sampling_and_grpo).

An exercise cell leaves the body of a function blank; it imports the solution from here over the
blank only when RLSD_SOLUTIONS=1, as `make test` sets it, so that CI runs every notebook with the
solutions in and a broken exercise or check fails the build. Students: try first, look here after.
Each solution is written from the equations with plain torch, not by calling the package.
"""
