package turnclient

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/pion/stun/v3"
)

// maxRedirects bounds how many 300 Try Alternate answers one Allocate
// follows.
const maxRedirects = 4

// allocateFollowing sends Allocate and follows 300 Try Alternate (RFC 8489
// section 10, RFC 8656 section 7.3): the client "considers the current
// transaction as failed and reattempts the request with the server
// specified in the attribute, using the same transport protocol", with the
// same credentials. A server it was already sent to ends the chain
// ("it MUST ignore the redirection and consider the transaction to have
// failed"), and so does a 300 without MESSAGE-INTEGRITY to a request that
// carried credentials: anyone on the path could forge that one.
func (c *Client) allocateFollowing(ctx context.Context, setters []stun.Setter) (*stun.Message, error) {
	visited := []netip.AddrPort{c.Server()}
	for {
		res, err := c.request(ctx, stun.MethodAllocate, setters...)
		var er *ErrorResponse
		if c.noAlt || !errors.As(err, &er) || er.Code != stun.CodeTryAlternate {
			return res, err
		}
		if er.response == nil {
			return nil, fmt.Errorf("%w (no response kept)", er)
		}
		if er.signed && !er.response.Contains(stun.AttrMessageIntegrity) && !er.response.Contains(stun.AttrMessageIntegritySHA256) {
			return nil, fmt.Errorf("%w: not followed: unauthenticated redirect to an authenticated request", er)
		}
		var alt stun.AlternateServer
		if err := alt.GetFrom(er.response); err != nil {
			return nil, fmt.Errorf("%w: no ALTERNATE-SERVER: %v", er, err)
		}
		ip, ok := netip.AddrFromSlice(alt.IP)
		if !ok || alt.Port <= 0 || alt.Port > 65535 {
			return nil, fmt.Errorf("%w: bad ALTERNATE-SERVER %v", er, alt)
		}
		next := netip.AddrPortFrom(ip.Unmap(), uint16(alt.Port))
		if next.Addr().Is4() != c.Server().Addr().Is4() {
			// RFC 8489 section 14.15: the family is the request's.
			return nil, fmt.Errorf("%w: ALTERNATE-SERVER %v is of another address family", er, next)
		}
		for _, v := range visited {
			if v == next {
				return nil, fmt.Errorf("%w: redirect loop back to %v", er, next)
			}
		}
		if len(visited) > maxRedirects {
			return nil, fmt.Errorf("%w: more than %d redirects", er, maxRedirects)
		}
		visited = append(visited, next)
		// Another server issues its own nonce (and may have another
		// realm): start its credential exchange afresh.
		c.mu.Lock()
		c.nonce = ""
		c.mu.Unlock()
		c.server.Store(&next)
	}
}
