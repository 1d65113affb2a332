package control

import (
	"sync"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// msgPool recycles decoded requests; a request never outlives its handler.
var msgPool = sync.Pool{New: func() any {
	m := stun.NewWithOptions(stun.WithStrict(true))
	m.Raw = make([]byte, 0, 1500)
	return m
}}

// reqCtx is one STUN request or indication being handled.
type reqCtx struct {
	s     *Server
	tx    dataplane.Tx
	sink  clientSink
	tuple fiveTuple
	now   time.Time
	msg   *stun.Message

	// Set by authenticate.
	authed   bool
	username string
	key      []byte
	sha256   bool // the client used MESSAGE-INTEGRITY-SHA256: answer with it
}

// handleSTUN validates a STUN message (RFC 8489 section 6.3) and dispatches
// it by class and method. Malformed messages are dropped silently.
func (s *Server) handleSTUN(tx dataplane.Tx, sink clientSink, t fiveTuple, p []byte) {
	if len(p) > s.cfg.MaxMessageSize {
		s.stats.dropOversize.Add(1)
		return
	}
	// RFC 8489 section 6.3: the two top bits are zero, the magic cookie is
	// present, the length is a multiple of 4 and matches the datagram.
	if !turnproto.IsSTUNFrame(p) {
		s.stats.dropMalformed.Add(1)
		return
	}
	msg := msgPool.Get().(*stun.Message)
	defer func() {
		msg.Reset()
		msgPool.Put(msg)
	}()
	msg.Raw = append(msg.Raw[:0], p...)
	if err := msg.Decode(); err != nil || len(msg.Attributes) > s.cfg.MaxAttributeCount {
		s.stats.dropMalformed.Add(1)
		return
	}
	// RFC 8489 section 14.7: FINGERPRINT, when present, is last and valid.
	if msg.Contains(stun.AttrFingerprint) {
		last := msg.Attributes[len(msg.Attributes)-1]
		if last.Type != stun.AttrFingerprint || stun.Fingerprint.Check(msg) != nil {
			s.stats.dropMalformed.Add(1)
			return
		}
	}
	r := &reqCtx{s: s, tx: tx, sink: sink, tuple: t, now: time.Now(), msg: msg}
	switch msg.Type.Class {
	case stun.ClassRequest:
		s.handleRequest(r)
	case stun.ClassIndication:
		if msg.Type.Method == methodSend {
			s.handleSend(r)
		}
		// Binding indications are keep-alives (RFC 8489 section 6.3.2):
		// nothing to do. Other indications are ignored.
	default:
		// Responses are never sent to a server.
		s.stats.dropMalformed.Add(1)
	}
}

func (s *Server) handleRequest(r *reqCtx) {
	switch r.msg.Type.Method {
	case methodBinding:
		s.handleBinding(r)
		return
	case methodAllocate, methodRefresh, methodCreatePermission, methodChannelBind,
		methodConnect, methodConnectionBind:
	default:
		// RFC 8489 section 6.3.1: an unknown method is a bad request.
		r.fail(stun.CodeBadRequest)
		return
	}
	if !r.authenticate() {
		return
	}
	if unk := unknownRequired(r.msg); len(unk) > 0 {
		r.fail(stun.CodeUnknownAttribute, stun.UnknownAttributes(unk))
		return
	}
	switch r.msg.Type.Method {
	case methodAllocate:
		s.handleAllocate(r)
	case methodRefresh:
		s.handleRefresh(r)
	case methodCreatePermission:
		s.handleCreatePermission(r)
	case methodChannelBind:
		s.handleChannelBind(r)
	case methodConnect:
		s.handleConnect(r) // RFC 6062 (tcpconnect.go)
	case methodConnectionBind:
		s.handleConnectionBind(r)
	}
}

// authenticate applies the long-term credential mechanism (RFC 8489
// section 9.2.4). It answers 400/401/438 itself and returns false when the
// request must not be processed further.
func (r *reqCtx) authenticate() bool {
	s, msg := r.s, r.msg
	hasMI := msg.Contains(stun.AttrMessageIntegrity)
	hasMI256 := msg.Contains(stun.AttrMessageIntegritySHA256)
	// "If the message does not contain a MESSAGE-INTEGRITY or
	// MESSAGE-INTEGRITY-SHA256 attribute, the server MUST generate an
	// error response with an error code of 401."
	if !hasMI && !hasMI256 {
		r.challenge(stun.CodeUnauthorized, authMissing)
		return false
	}
	var user stun.Username
	var realm stun.Realm
	var nonce stun.Nonce
	// "If the message contains a MESSAGE-INTEGRITY or a
	// MESSAGE-INTEGRITY-SHA256 attribute, but is missing either the
	// USERNAME or USERHASH, REALM, or NONCE attribute, the server MUST
	// generate an error response with an error code of 400."
	if user.GetFrom(msg) != nil || realm.GetFrom(msg) != nil || nonce.GetFrom(msg) != nil {
		s.stats.authFailures[authBadRequest].Add(1)
		r.failUnauth(stun.CodeBadRequest)
		return false
	}
	if string(realm) != s.cfg.Realm {
		r.challenge(stun.CodeUnauthorized, authWrongRealm)
		return false
	}
	// "If the NONCE is no longer valid, the server MUST generate an error
	// response with an error code of 438."
	if f := s.nonces.check(string(nonce), r.tuple.client.Addr(), r.now, s.cfg.NonceLifetime); f != 0 {
		r.challenge(stun.CodeStaleNonce, f)
		return false
	}
	// "If the value of the USERNAME attribute is not valid, the server MUST
	// generate an error response with an error code of 401."
	pws, f := s.creds.Load().passwords(string(user), r.now)
	if f != 0 {
		r.challenge(stun.CodeUnauthorized, f)
		return false
	}
	alg, err := passwordAlgorithm(msg)
	if err != nil {
		s.stats.authFailures[authBadRequest].Add(1)
		r.failUnauth(stun.CodeBadRequest)
		return false
	}
	for _, pw := range pws {
		key := longTermKey(string(user), string(realm), pw, alg)
		var ok bool
		if hasMI256 {
			// RFC 8489 section 9.2.4: with both present, the SHA-256 one
			// is the one checked.
			ok = checkIntegritySHA256(msg.Raw, key)
		} else {
			ok = stun.MessageIntegrity(key).Check(msg) == nil
		}
		if ok {
			r.authed, r.username, r.key, r.sha256 = true, string(user), key, hasMI256
			if _, stream := r.sink.(*streamConn); !stream {
				s.trusted.prove(r.tuple, r.now, r.now.Add(s.cfg.NonceLifetime))
			}
			return true
		}
	}
	// "Using the password associated with the username in the USERNAME
	// attribute, compute the value for the message integrity ... If the
	// resulting value does not match ..., 401."
	r.challenge(stun.CodeUnauthorized, authBadIntegrity)
	return false
}

// allowUnauth charges one unauthenticated response and reports whether it
// may be sent. Over UDP the bucket is per source IP (reflection and
// amplification with spoofed sources). Over TCP/TLS it is per connection:
// the handshake already proved the source, a response dropped on a stream
// is never retransmitted, and many legitimate clients behind one NAT
// (TURN over TLS from an office) must not starve each other; a connection
// that floods is still cut off.
//
// A UDP 5-tuple that holds an allocation or has authenticated within the
// nonce lifetime has a bucket of its own (trustedTuples): other 5-tuples
// of its IP cannot empty it.
func (r *reqCtx) allowUnauth() bool {
	if sc, ok := r.sink.(*streamConn); ok {
		if sc.unauth.take(1, r.now) {
			return true
		}
	} else if ok, trusted := r.s.trusted.take(r.tuple, r.now, r.s.lookup(r.tuple) != nil); trusted {
		if ok {
			return true
		}
	} else if r.s.limiter.allow(r.tuple.client.Addr(), r.now) {
		return true
	}
	r.s.stats.authFailures[authRateLimited].Add(1)
	r.s.stats.requests[methodIndex(r.msg.Type.Method)][resultIndex(-1)].Add(1)
	return false
}

// challenge answers 401 or 438 with REALM and a fresh NONCE (RFC 8489
// section 9.2.4), subject to the unauthenticated rate limit.
func (r *reqCtx) challenge(code stun.ErrorCode, why authFailure) {
	r.s.stats.authFailures[why].Add(1)
	if !r.allowUnauth() {
		return
	}
	r.reply(stun.ClassErrorResponse, code,
		stun.NewRealm(r.s.cfg.Realm),
		stun.NewNonce(r.s.nonces.issue(r.tuple.client.Addr(), r.now)))
}

// failUnauth answers an error to an unauthenticated request.
func (r *reqCtx) failUnauth(code stun.ErrorCode, extra ...stun.Setter) {
	if !r.allowUnauth() {
		return
	}
	r.reply(stun.ClassErrorResponse, code, extra...)
}

// fail answers an error response; authenticated requests get
// MESSAGE-INTEGRITY (RFC 8656 section 6.3.3 and friends), the others are
// rate limited.
func (r *reqCtx) fail(code stun.ErrorCode, extra ...stun.Setter) {
	if !r.authed {
		r.failUnauth(code, extra...)
		return
	}
	r.reply(stun.ClassErrorResponse, code, extra...)
}

// success answers a success response.
func (r *reqCtx) success(extra ...stun.Setter) []byte {
	return r.reply(stun.ClassSuccessResponse, 0, extra...)
}

// reply builds, signs and sends a response and returns its bytes.
func (r *reqCtx) reply(class stun.MessageClass, code stun.ErrorCode, extra ...stun.Setter) []byte {
	m := r.build(class, code, extra...)
	if m == nil {
		return nil
	}
	// Counted before the send: whoever reads the stats after seeing the
	// response finds it counted.
	r.s.stats.requests[methodIndex(r.msg.Type.Method)][resultIndex(int(code))].Add(1)
	r.sink.send(r.tx, m)
	return m
}

func (r *reqCtx) build(class stun.MessageClass, code stun.ErrorCode, extra ...stun.Setter) []byte {
	m := &stun.Message{Raw: make([]byte, 0, 256)}
	m.Type = stun.NewType(r.msg.Type.Method, class)
	m.TransactionID = r.msg.TransactionID
	m.WriteHeader()
	if code != 0 {
		if err := code.AddTo(m); err != nil {
			return nil
		}
	}
	for _, set := range extra {
		if set == nil {
			continue
		}
		if err := set.AddTo(m); err != nil {
			r.s.log.Debug("build response", "err", err)
			return nil
		}
	}
	if r.authed {
		if r.sha256 {
			addIntegritySHA256(m, r.key)
		} else if err := stun.MessageIntegrity(r.key).AddTo(m); err != nil {
			return nil
		}
	}
	if err := stun.Fingerprint.AddTo(m); err != nil {
		return nil
	}
	return m.Raw
}

// setterFunc adapts a function to stun.Setter.
type setterFunc func(m *stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

// handleBinding answers a Binding request with XOR-MAPPED-ADDRESS (RFC
// 8489 section 7.3.1); it needs no credentials and is rate limited like
// every unauthenticated response.
func (s *Server) handleBinding(r *reqCtx) {
	if s.natBinding(r) { // RFC 5780, on a listener with an other address
		return
	}
	if unk := natUnsupported(r.msg); len(unk) > 0 {
		r.fail(stun.CodeUnknownAttribute, stun.UnknownAttributes(unk))
		return
	}
	if unk := unknownRequired(r.msg); len(unk) > 0 {
		r.fail(stun.CodeUnknownAttribute, stun.UnknownAttributes(unk))
		return
	}
	if !r.allowUnauth() {
		return
	}
	r.reply(stun.ClassSuccessResponse, 0, setterFunc(func(m *stun.Message) error {
		return addXORAddr(m, stun.AttrXORMappedAddress, r.tuple.client)
	}))
}
