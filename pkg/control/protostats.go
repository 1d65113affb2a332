package control

// protocolStats is ServerStats.Protocol: the counters of the DTLS
// listeners (dtls.go).
func (s *Server) protocolStats() map[string]uint64 {
	d := &s.stats.dtls
	return map[string]uint64{
		"dtls_handshakes":        d.handshakes.Load(),
		"dtls_handshake_errors":  d.handshakeErrors.Load(),
		"dtls_refused_pending":   d.refusedPending.Load(),
		"dtls_records_malformed": d.recordsMalformed.Load(),
	}
}
