"""Bring your own agent: run any framework's agent against the gateway and train it with ERL.

`Episode` (a context manager) runs one task and yields its token-level Trajectory; `@agent` makes a
function the workflow's attempt strategy (`GatewayAttempts`), so attempt 1, the reflection and attempt 2
under the reflected system prompt run exactly as with the native agent loop.
"""

from erl_mega.sdk.attempts import Agent, GatewayAttempts, agent, load_agent
from erl_mega.sdk.episode import AgentContext, Episode, Sampling

__all__ = ["Agent", "AgentContext", "Episode", "GatewayAttempts", "Sampling", "agent", "load_agent"]
