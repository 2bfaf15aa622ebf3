"""Write app/examples/credit.csv: a small synthetic credit-default table for the README walkthrough.

The label ``default`` ("yes"/"no") depends on five columns only: ``income``, ``debt_ratio``,
``late_payments``, ``years_employed`` and ``employment``. The others (``noise_1`` to ``noise_4``,
``region``, ``shoe_size``) are drawn independently of it, so an L1-regularized model should
drop them. Re-running the script rewrites the same file (fixed seed).

    python app/examples/make_credit.py
"""

import csv
from pathlib import Path

import numpy as np

N_ROWS = 800
SEED = 1024
OUT = Path(__file__).with_name("credit.csv")


def main() -> None:
    rng = np.random.default_rng(SEED)
    income = rng.lognormal(mean=3.9, sigma=0.45, size=N_ROWS)  # thousands per year
    debt_ratio = rng.beta(2.0, 5.0, size=N_ROWS)
    late_payments = rng.poisson(0.8, size=N_ROWS)
    years_employed = rng.integers(0, 31, size=N_ROWS)
    employment = rng.choice(
        ["salaried", "self-employed", "unemployed"], p=[0.7, 0.2, 0.1], size=N_ROWS
    )
    region = rng.choice(["north", "south", "east", "west"], size=N_ROWS)
    noise = rng.standard_normal((N_ROWS, 4))
    shoe_size = rng.integers(35, 48, size=N_ROWS)

    logit = (
        -1.0
        - 1.6 * (np.log(income) - 3.9) / 0.45
        + 5.0 * (debt_ratio - 0.29)
        + 0.9 * late_payments
        - 0.05 * years_employed
        + np.select([employment == "self-employed", employment == "unemployed"], [0.5, 1.8], 0.0)
    )
    default = rng.random(N_ROWS) < 1.0 / (1.0 + np.exp(-logit))

    header = [
        "income", "debt_ratio", "late_payments", "years_employed", "employment",
        "region", "noise_1", "noise_2", "noise_3", "noise_4", "shoe_size", "default",
    ]  # fmt: skip
    with open(OUT, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(N_ROWS):
            writer.writerow(
                [
                    f"{income[i]:.2f}",
                    f"{debt_ratio[i]:.4f}",
                    int(late_payments[i]),
                    int(years_employed[i]),
                    employment[i],
                    region[i],
                    *(f"{v:.4f}" for v in noise[i]),
                    int(shoe_size[i]),
                    "yes" if default[i] else "no",
                ]
            )
    print(f"wrote {OUT} ({N_ROWS} rows, {default.mean():.0%} defaults)")


if __name__ == "__main__":
    main()
