//! What a LicenseGrant's validity window means for its status at a given
//! moment, and when that changes by itself.

use super::validate::DesiredGrant;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Where an imported grant stands at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// A revocation: recorded, nothing to count.
    Recorded,
    /// Revoked by a later revocation.
    Revoked(DateTime<Utc>),
    /// validFrom is still ahead.
    NotYetValid,
    /// validUntil has passed.
    Expired,
    /// Counts towards the tenant's quota now.
    Current,
}

/// The validity of a grant at `now`: the window is [validFrom, validUntil).
pub fn validity(grant: &DesiredGrant, revoked_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Validity {
    if grant.grant_type == "REVOCATION" {
        return Validity::Recorded;
    }
    if let Some(at) = revoked_at {
        return Validity::Revoked(at);
    }
    if now < grant.valid_from {
        Validity::NotYetValid
    } else if now >= grant.valid_until {
        Validity::Expired
    } else {
        Validity::Current
    }
}

/// A little past the boundary, so the timed look lands after it even when
/// timers fire early by a few milliseconds.
const BOUNDARY_MARGIN: Duration = Duration::from_millis(500);

/// How long until the grant's status changes by itself (it becomes valid or
/// expires), so the controller looks again exactly then instead of polling.
/// None when nothing will change with time.
pub fn next_change(validity: Validity, grant: &DesiredGrant, now: DateTime<Utc>) -> Option<Duration> {
    let at = match validity {
        Validity::NotYetValid => grant.valid_from,
        Validity::Current => grant.valid_until,
        Validity::Recorded | Validity::Revoked(_) | Validity::Expired => return None,
    };
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    Some(wait.saturating_add(BOUNDARY_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license_grant::signature::tests::spec;
    use crate::license_grant::validate::validate;
    use chrono::TimeZone;

    fn desired(extra: &str) -> DesiredGrant {
        validate(&spec(extra)).expect("valid fixture")
    }

    #[test]
    fn the_validity_window_is_half_open_and_timed() {
        let d = desired("");
        let at = |y, m, day, s| Utc.with_ymd_and_hms(y, m, day, 0, 0, s).single().expect("valid date");
        let eve = |s| {
            Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, s)
                .single()
                .expect("valid date")
        };
        assert_eq!(validity(&d, None, eve(59)), Validity::NotYetValid);
        assert_eq!(validity(&d, None, at(2027, 1, 1, 0)), Validity::Current);
        assert_eq!(validity(&d, None, at(2028, 1, 1, 0)), Validity::Expired);
        let revoked = at(2027, 6, 1, 0);
        assert_eq!(
            validity(&d, Some(revoked), at(2027, 7, 1, 0)),
            Validity::Revoked(revoked)
        );
        assert_eq!(
            validity(
                &{
                    let mut r = d.clone();
                    r.grant_type = "REVOCATION";
                    r
                },
                None,
                at(2030, 1, 1, 0)
            ),
            Validity::Recorded
        );

        let before = eve(50);
        let wait = next_change(Validity::NotYetValid, &d, before).expect("becomes valid");
        assert!(
            wait >= Duration::from_secs(10) && wait <= Duration::from_secs(11),
            "{wait:?}"
        );
        let near_end = d.valid_until - chrono::Duration::seconds(3);
        let wait = next_change(Validity::Current, &d, near_end).expect("expires");
        assert!(
            wait >= Duration::from_secs(3) && wait <= Duration::from_secs(4),
            "{wait:?}"
        );
        // Already past the boundary (the clock moved on): look again at once.
        let late = next_change(Validity::Current, &d, d.valid_until + chrono::Duration::seconds(1));
        assert_eq!(late, Some(BOUNDARY_MARGIN));
        assert_eq!(next_change(Validity::Expired, &d, near_end), None);
        assert_eq!(next_change(Validity::Recorded, &d, near_end), None);
    }
}
