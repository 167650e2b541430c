//! What `/metrics` says of the coordination: the state (exported for every gateway, `off` when
//! it acts alone), the members it sees, its share of each version's slots, and the requests
//! handed between gateways.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No `[coordination]`: this gateway uses every replica's whole limit.
    Off,
    /// Waiting for its first view to settle: no slot of its own yet.
    Joining,
    /// Its view is settled: it uses its share.
    Coordinated,
    /// A view changed and another member has not released it yet: it uses no more than it had
    /// and no more than its new share.
    Settling,
    /// It could not renew its Lease for the Lease duration: ⌊limit / members⌋ per replica.
    Fallback,
}

impl State {
    const ALL: [State; 5] = [
        State::Off,
        State::Joining,
        State::Coordinated,
        State::Settling,
        State::Fallback,
    ];

    fn label(self) -> &'static str {
        match self {
            State::Off => "off",
            State::Joining => "joining",
            State::Coordinated => "coordinated",
            State::Settling => "settling",
            State::Fallback => "fallback",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CoordinationMetrics {
    state: IntGaugeVec,
    pub members: IntGauge,
    share: IntGaugeVec,
    handed: IntCounterVec,
    pub lease_errors: prometheus::IntCounter,
}

impl CoordinationMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = CoordinationMetrics {
            state: IntGaugeVec::new(
                Opts::new(
                    "scoregate_coordination_state",
                    "1 for the state this gateway's share of the replicas' limits is in (off, joining, coordinated, settling, fallback).",
                ),
                &["state"],
            )?,
            members: IntGauge::new(
                "scoregate_coordination_members",
                "Gateways this one counts as members of its group (itself included).",
            )?,
            share: IntGaugeVec::new(
                Opts::new(
                    "scoregate_coordination_share_slots",
                    "Concurrent requests this gateway may have at the version's replicas: its share of their limits.",
                ),
                &["service", "version"],
            )?,
            handed: IntCounterVec::new(
                Opts::new(
                    "scoregate_coordination_handed_over_total",
                    "Requests handed to another gateway (direction sent) or taken from one (received), or refused on the peer port (refused).",
                ),
                &["service", "direction"],
            )?,
            lease_errors: prometheus::IntCounter::new(
                "scoregate_coordination_lease_errors_total",
                "Failed writes of this gateway's member Lease.",
            )?,
        };
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.members.clone()))?;
        registry.register(Box::new(m.share.clone()))?;
        registry.register(Box::new(m.handed.clone()))?;
        registry.register(Box::new(m.lease_errors.clone()))?;
        m.set_state(State::Off);
        m.members.set(1);
        Ok(m)
    }

    pub fn set_state(&self, state: State) {
        for s in State::ALL {
            self.state
                .with_label_values(&[s.label()])
                .set(i64::from(s == state));
        }
    }

    pub fn share(&self, service: &str, version: &str, slots: usize) {
        self.share
            .with_label_values(&[service, version])
            .set(i64::try_from(slots).unwrap_or(i64::MAX));
    }

    pub fn handed(&self, service: &str, direction: &'static str) {
        self.handed.with_label_values(&[service, direction]).inc();
    }
}
