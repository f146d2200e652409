//! The conformance daemon's service: a counter over TCP, the same in every
//! runtime, so that only the handoff plumbing differs between them.
//! `PING` → `PONG <pid>`; `INC` → `OK <n>` once fsynced, `RETRY` while
//! drained or sealed.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use handoff_std::SealReport;
use handoff_std::os::process::poll_readable;

pub fn flag(name: &str) -> bool {
    std::env::var("TEST_DAEMON")
        .unwrap_or_default()
        .split(',')
        .any(|f| f == name)
}

pub fn number(name: &str) -> Option<u64> {
    let prefix = format!("{name}=");
    std::env::var("TEST_DAEMON")
        .unwrap_or_default()
        .split(',')
        .find_map(|f| f.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

struct Counter {
    file: Option<File>,
    value: u64,
}

pub struct Service {
    counter: Mutex<Counter>,
    path: std::path::PathBuf,
    accepting: AtomicBool,
    in_flight: Mutex<u32>,
    idle: Condvar,
    wake: Mutex<Option<UnixStream>>,
}

impl Service {
    pub fn open(data_dir: &Path) -> Arc<Service> {
        let service = Service {
            counter: Mutex::new(Counter {
                file: None,
                value: 0,
            }),
            path: data_dir.join("counter"),
            accepting: AtomicBool::new(true),
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
            wake: Mutex::new(None),
        };
        service.reopen();
        Arc::new(service)
    }

    pub fn value(&self) -> u64 {
        self.counter.lock().unwrap().value
    }

    fn reopen(&self) {
        let mut c = self.counter.lock().unwrap();
        if c.file.is_some() {
            return;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .expect("counter file");
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        c.value = text.trim().parse().unwrap_or(0);
        c.file = Some(file);
    }

    fn handle(&self, line: &str) -> String {
        match line.trim() {
            "PING" => format!("PONG {}", std::process::id()),
            "INC" => {
                let mut c = self.counter.lock().unwrap();
                let next = c.value + 1;
                let Some(file) = c.file.as_mut() else {
                    return "RETRY".into();
                };
                file.seek(SeekFrom::Start(0)).unwrap();
                file.write_all(format!("{next:020}").as_bytes()).unwrap();
                file.sync_data().unwrap();
                c.value = next;
                format!("OK {next}")
            }
            other => format!("ERR {other:?}"),
        }
    }

    /// Accepts on `listener` from a thread of its own while accepting.
    pub fn start(self: &Arc<Self>, listener: TcpListener) {
        let (wake_rx, wake_tx) = UnixStream::pair().unwrap();
        *self.wake.lock().unwrap() = Some(wake_tx);
        listener.set_nonblocking(true).unwrap();
        let me = self.clone();
        std::thread::spawn(move || {
            loop {
                let ready = poll_readable(&[listener.as_fd(), wake_rx.as_fd()], None).unwrap();
                if ready[1] {
                    let mut b = [0u8; 16];
                    let _ = (&wake_rx).read(&mut b);
                }
                if me.accepting.load(Ordering::SeqCst)
                    && ready[0]
                    && let Ok((s, _)) = listener.accept()
                {
                    s.set_nonblocking(false).unwrap();
                    let me = me.clone();
                    std::thread::spawn(move || me.serve_conn(s));
                }
            }
        });
    }

    fn serve_conn(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            *self.in_flight.lock().unwrap() += 1;
            let reply = self.handle(&line);
            let ok = writeln!(out, "{reply}").is_ok();
            *self.in_flight.lock().unwrap() -= 1;
            self.idle.notify_all();
            if !ok {
                break;
            }
            line.clear();
        }
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        if let Some(w) = self.wake.lock().unwrap().as_ref() {
            let _ = (&*w).write(&[1]);
        }
    }

    /// The blocking drain: stop accepting, wait out in-flight requests.
    pub fn drain_blocking(&self) {
        self.stop_accepting();
        if let Some(ms) = number("drain-ms") {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let mut n = self.in_flight.lock().unwrap();
        while *n > 0 {
            n = self.idle.wait(n).unwrap();
        }
    }

    pub fn seal(&self) -> Result<SealReport, String> {
        if flag("seal-fails") {
            return Err("disk full (test)".into());
        }
        let mut c = self.counter.lock().unwrap();
        if let Some(f) = c.file.take() {
            f.sync_all().map_err(|e| e.to_string())?;
        }
        Ok(SealReport {
            last_revision_per_shard: vec![c.value],
            data_dir_fingerprint: [c.value as u8; 32],
        })
    }

    pub fn resume(&self) {
        self.reopen();
        self.accepting.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.lock().unwrap().as_ref() {
            let _ = (&*w).write(&[1]);
        }
    }
}
