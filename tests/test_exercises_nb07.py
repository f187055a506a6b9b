"""Each targeted hint of notebook 07's exercises, reached by the mistake it names (tests/test_checks.py runs the table)."""



from labkit.pipelines import strategies  # noqa: E402


def _a_simulated_point() -> str:
    # a simulated point is never fast for real, however low its latency reads (it runs the float model)
    return strategies.dashboard_point(quantization="simulated", bits=4)["name"]


MISTAKES = [
    ("07.fastest_within_2_points", "simulated", _a_simulated_point),
]

