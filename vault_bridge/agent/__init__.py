"""The renewal agent: daemon loop, passes, signals, health and metrics, revocation, and the
hand-over of CLI requests to a running agent.
"""
