"""The names the Locust traffic reports its requests under, shared by the locustfile and the step report
(which must not import Locust)."""

RECOMMEND_KNOWN = "/recommend [known]"
RECOMMEND_COLD_START = "/recommend [cold start]"
SHED = "/recommend [shed]"  # refused by admission control (429): counted apart, neither an answer nor a failure
RECOMMENDATIONS = frozenset({RECOMMEND_KNOWN, RECOMMEND_COLD_START, SHED})
