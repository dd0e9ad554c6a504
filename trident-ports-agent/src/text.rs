//! One shared copy of each repeated text. A large policy repeats a few purposes, sources,
//! backend names and allow reasons over many entries: 100,000 small strings were a third of it,
//! and, allocated among the YAML parser's short-lived memory, kept that memory from going back
//! to the system.
use std::{collections::HashSet, sync::Arc};

#[derive(Default)]
pub(crate) struct Texts(HashSet<Arc<str>>);

impl Texts {
    /// Makes `t` the shared copy of its text, the first one seen becoming it.
    pub(crate) fn share(&mut self, t: &mut Arc<str>) {
        match self.0.get(t) {
            Some(shared) => *t = shared.clone(),
            None => {
                self.0.insert(t.clone());
            }
        }
    }
}
