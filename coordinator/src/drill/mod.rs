//! Disaster-recovery drills (issue 13).
