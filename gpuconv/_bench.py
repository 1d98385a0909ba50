"""gpuconv bench (placeholder until the benchmark issue fills it in)."""


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print("gpuconv bench: not implemented yet")
    return 1
