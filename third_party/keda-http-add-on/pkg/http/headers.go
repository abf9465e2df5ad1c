package http

// HeaderColdStart is the response header that indicates whether a cold start occurred.
const HeaderColdStart = "X-KEDA-HTTP-Cold-Start"
