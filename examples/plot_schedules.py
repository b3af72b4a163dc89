"""Draw the common learning-rate schedules over 1000 steps into one PNG.

Usage: ``python examples/plot_schedules.py [OUTPUT]`` (default ``schedules.png``).
"""

import argparse

import fastopt.schedules as fs

STEPS = 1000
PEAK = 0.1


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="schedules.png", help="PNG file to write")
    output = parser.parse_args(argv).output
    schedules = {
        "step_decay(step_size=250, gamma=0.5)": fs.step_decay(PEAK, 250, 0.5),
        "exponential_decay(gamma=0.997)": fs.exponential_decay(PEAK, 0.997),
        "cosine_annealing(T_max=1000)": fs.cosine_annealing(PEAK, STEPS),
        "warmup(cosine_annealing, 100 steps)": fs.warmup(fs.cosine_annealing(PEAK, 900), 100),
        "cosine_annealing_warm_restarts(T_0=100, T_mult=2)": fs.cosine_annealing_warm_restarts(
            PEAK, 100, 2
        ),
        "one_cycle(total_steps=1000)": fs.one_cycle(PEAK, STEPS),
        "cyclic(step_size_up=100, triangular2)": fs.cyclic(
            PEAK / 10, PEAK, 100, mode="triangular2"
        ),
        # The Noam rule peaks at factor / sqrt(d_model * warmup_steps); scale it to PEAK.
        "inverse_sqrt(warmup_steps=100)": fs.inverse_sqrt(
            512, 100, factor=PEAK * (512 * 100) ** 0.5
        ),
    }
    return fs.plot(
        list(schedules.values()),
        STEPS,
        output,
        labels=list(schedules),
        title="fastopt.schedules",
        figsize=(11.0, 6.0),
    )


if __name__ == "__main__":
    print(main())
