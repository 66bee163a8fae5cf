"""
The twistd plugin for twistproxy: ``twistd -n twistproxy --port 8080``.

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
