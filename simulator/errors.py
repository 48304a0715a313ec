"""Typed errors of the simulator."""


class SimulatorError(ValueError):
    """Base class: the input to the simulator cannot be used."""


class ScenarioError(SimulatorError):
    """A scenario is invalid. The message names the file and the key."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")
