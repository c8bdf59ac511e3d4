"""Selective-scan backends (interface stub; the helper fills this in).

selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto")
    u, delta: (batch, channels, length)
    A:        (channels, d_state)          negative real decay rates (A = -exp(A_log))
    B, C:     (batch, groups, d_state, length), channels % groups == 0; channel c uses group c // (channels // groups)
    D:        (channels,) or None          skip connection
    delta_bias: (channels,) or None        added to delta before softplus
    returns y: (batch, channels, length), same dtype as u

    dt_t = softplus(delta_t + delta_bias)               (if delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t   (h: (batch, channels, d_state), h_{-1} = 0)
    y_t  = <C_t, h_t> + D * u_t
"""
