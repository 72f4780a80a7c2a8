"""Agents written with other frameworks, trained through the gateway (`erl-mega train agent=<name>`)."""
