//! The public face of an async adapter, written once: [`crate::async_adapter`]
//! expands, in the adapter's crate root, to the re-exports a daemon needs
//! and to the roles' entry points with the adapter's reactor filled in.

/// Expands, in an async adapter's crate root, to its public face over the
/// reactor type `$reactor` (`Default + Send`): the types a daemon needs,
/// re-exported; `HandshookSuccessor` and `BegunSuccessor` as aliases of the
/// driver's typestates; `perform_handoff`, `serve`, `serve_with` and
/// `handshake` as the driver's futures on a fresh `$reactor`; and a
/// compile-time check that every one of those futures is `Send` (when the
/// daemon's hooks are), so they can be spawned on a multi-threaded
/// executor. The adapter itself is then its reactor and nothing else.
#[macro_export]
macro_rules! async_adapter {
    ($reactor:ty) => {
        /// The operating-system layer, `handoff_os` (listeners, the lock,
        /// the control socket, signals).
        pub use $crate::__os as os;

        pub use $crate::__core::{
            AbortReason, DrainReport, EndCause, HandoffId, IncumbentConfig, IncumbentEnd,
            IncumbentFate, SuccessorConfig, SuccessorFailure, SuccessorFate, SupervisorConfig,
        };
        pub use $crate::__os::control::PeerPolicy;
        pub use $crate::__os::lock::DataDirLock;
        pub use $crate::reactor::AsyncDrainable;
        pub use $crate::{
            AnnounceError, Endpoint, HandoffOutcome, Handover, HookError, Launch, PassError,
            PassedConnection, ReadyReport, Role, SealReport, ServeEnd, ServeError, SpawnSpec,
            StateSnapshot, SuccessorError, Supervisor, SupervisorError, detect_role,
        };

        /// `Hello` answered; waiting for `Begin` (see
        /// [`handoff_driver::reactor::HandshookSuccessor`]).
        pub type HandshookSuccessor = $crate::reactor::HandshookSuccessor<$reactor>;

        /// `Begin` received and the lock held: take the listeners, open the
        /// state inside `start_up`, then `announce_and_bind` (see
        /// [`handoff_driver::reactor::BegunSuccessor`]).
        pub type BegunSuccessor = $crate::reactor::BegunSuccessor<$reactor>;

        /// Runs one handoff of `supervisor`'s daemon to its end (see
        /// [`handoff_driver::reactor::perform_handoff`]): `Ok` holds the
        /// outcome whether it committed or rolled back. Dropping the future
        /// (a cancelled task, a timeout around it) stops the successor and
        /// reaps it. Handoffs of different services run concurrently, each
        /// its own future.
        pub async fn perform_handoff(
            supervisor: &Supervisor,
            spec: SpawnSpec,
        ) -> ::core::result::Result<HandoffOutcome, SupervisorError> {
            $crate::reactor::perform_handoff(<$reactor>::default(), supervisor, spec).await
        }

        /// Answers supervisors until a handoff commits (see
        /// [`handoff_driver::reactor::serve`]). Take the endpoint from
        /// [`Endpoint::bind_cold_start`], from
        /// [`BegunSuccessor::announce_and_bind`], or a
        /// `handoff_std::Incumbent`; the timings, build id and peer policy
        /// set on it hold.
        pub async fn serve(
            incumbent: impl ::core::convert::Into<Endpoint>,
            daemon: &impl AsyncDrainable,
        ) -> ::core::result::Result<ServeEnd, ServeError> {
            $crate::reactor::serve(<$reactor>::default(), incumbent.into(), daemon).await
        }

        /// [`serve`] with explicit timings, peer policy and build id, in
        /// place of those set on `incumbent`.
        pub async fn serve_with(
            incumbent: impl ::core::convert::Into<Endpoint>,
            daemon: &impl AsyncDrainable,
            config: IncumbentConfig,
            policy: PeerPolicy,
            build_id: &[u8],
        ) -> ::core::result::Result<ServeEnd, ServeError> {
            let ep = incumbent.into();
            $crate::reactor::serve_with(<$reactor>::default(), ep, daemon, config, policy, build_id)
                .await
        }

        /// Says `Hello` for `successor` (a [`Launch`] from [`detect_role`],
        /// or a `handoff_std::Successor`) with `build_id`, and waits for the
        /// supervisor's answer (see [`handoff_driver::reactor::handshake`]).
        /// Do the start-up work that needs no lock before this: the old
        /// binary still serves meanwhile.
        pub async fn handshake(
            successor: impl ::core::convert::Into<Launch>,
            build_id: &[u8],
        ) -> ::core::result::Result<HandshookSuccessor, SuccessorError> {
            $crate::reactor::handshake(<$reactor>::default(), successor.into(), build_id).await
        }

        // Checked when the adapter compiles, never run: every future above
        // is `Send` (given hooks whose futures are), so `tokio::spawn` and
        // other multi-threaded executors take them.
        const _: () = {
            fn send<T: ::core::marker::Send>(_: &T) {}
            struct Hooks;
            impl AsyncDrainable for Hooks {
                async fn drain(
                    &self,
                    _: ::std::time::Instant,
                    _: Handover,
                ) -> ::core::result::Result<DrainReport, HookError> {
                    ::core::result::Result::Ok(DrainReport::default())
                }
                async fn seal(&self) -> ::core::result::Result<SealReport, HookError> {
                    ::core::result::Result::Ok(SealReport::default())
                }
                async fn resume_after_abort(&self) -> ::core::result::Result<(), HookError> {
                    ::core::result::Result::Ok(())
                }
            }
            #[allow(dead_code)]
            fn futures_are_send(
                sup: &Supervisor,
                spec: SpawnSpec,
                ep: Endpoint,
                launch: Launch,
                handshook: HandshookSuccessor,
                begun: BegunSuccessor,
                path: &::std::path::Path,
            ) {
                send(&perform_handoff(sup, spec));
                send(&serve(ep, &Hooks));
                send(&handshake(launch, b""));
                send(&handshook.wait_for_begin(path));
                send(&begun.announce_and_bind(ReadyReport::default(), path));
            }
        };
    };
}
