//! Contract mocks of the guardrail services the gateway talks to, each on a loopback socket,
//! answering in the service's own shapes by fixed, documented rules, recording every request
//! it receives (method, path, query, headers, body), and scriptable per test through
//! [`service::ServiceMock`]: a fixed answer (a block, a 5xx, a malformed body), a dropped
//! connection, a slow or a missing answer.

pub mod azure;
pub mod lakera;
pub mod presidio;
pub mod service;
