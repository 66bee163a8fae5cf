"""
The twistd plugins of twistproxy: ``twistd -n twistproxy --port 8080``,
and ``twistproxy-supervisor``, which ``twistproxy --workers N`` becomes
(never typed by a user; see :mod:`twistproxy.supervisor_tap`).

Kept tiny on purpose: twistd imports every plugin module to list them, and
``twistproxy.tap`` is only imported when this plugin is chosen.
"""

from twisted.application.service import ServiceMaker

twistproxy = ServiceMaker(
    "twistproxy",
    "twistproxy.tap",
    "An intercepting HTTP proxy: inspect, modify and record traffic.",
    "twistproxy",
)

twistproxy_supervisor = ServiceMaker(
    "twistproxy-supervisor",
    "twistproxy.supervisor_tap",
    "(internal) What 'twistproxy --workers N' runs as: the workers' supervisor.",
    "twistproxy-supervisor",
)
