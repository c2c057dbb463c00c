//! No copy of an agent's password is left in freed memory: every heap block that held it is
//! wiped before it is released. Its own test binary, because it installs a global allocator that
//! looks through each block freed while the check is armed for a marker password.

use ccgw_bridge::config::load_agents;
use ccgw_bridge::grpc::validate::Limits;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The password; written to its file without ever being on the heap in the test itself.
const MARKER: &[u8] = b"Zq7-freed-memory-marker";

static ARMED: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting freed blocks that still hold [`MARKER`] while armed.
struct Scanning;

unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::SeqCst) && layout.size() >= MARKER.len() {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes until released below.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if block.windows(MARKER.len()).any(|w| w == MARKER) {
                FOUND.fetch_add(1, Ordering::SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Scanning = Scanning;

/// Runs `f` with the check armed and returns how many freed blocks held the password.
fn freed_copies(f: impl FnOnce()) -> usize {
    FOUND.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    f();
    ARMED.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

fn private_file(path: &std::path::Path, parts: &[&[u8]]) {
    let mut file = std::fs::File::create(path).unwrap();
    for part in parts {
        file.write_all(part).unwrap();
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn no_password_copy_is_left_in_freed_memory() {
    let dir = std::env::temp_dir().join(format!("ccgw-secret-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("password");
    private_file(&password_file, &[MARKER, b"\n"]);
    let agents_file = dir.join("agents.toml");
    // Every option set and a 24-digit phone: the sign-in body is longer than 128 bytes.
    let agents = format!(
        "[[agent]]\nid = \"1001\"\nphone_number = \"888888888888888888888888\"\npassword_file = \"{}\"\nauto_answer = false\nauto_enter_idle = false\nrelease_phone = false\nagent_type = 11\nstatus = 5\n",
        password_file.display()
    );
    private_file(&agents_file, &[agents.as_bytes()]);

    let mut loaded = Vec::new();
    let reading = freed_copies(|| {
        loaded = load_agents(&agents_file, &Limits::default(), &|_| None).unwrap();
    });
    assert_eq!(reading, 0, "reading the password file left copies");
    assert_eq!(loaded[0].params.password.expose().as_bytes(), MARKER);

    let body = freed_copies(|| {
        let body = loaded[0].params.body(None);
        assert!(body.len() > 128, "{}", body.len());
        drop(body);
    });
    assert_eq!(body, 0, "building the sign-in body left copies");

    let hashing = freed_copies(|| {
        let salt = ccgw_bridge::crypto::random_salt();
        let password = loaded[0].params.password.expose().as_bytes();
        drop(ccgw_bridge::crypto::salted_sha256(&salt, &[password]));
    });
    assert_eq!(hashing, 0, "hashing the credentials left copies");

    let dropping = freed_copies(|| drop(std::mem::take(&mut loaded)));
    assert_eq!(dropping, 0, "the held password was not wiped");
    std::fs::remove_dir_all(&dir).unwrap();
}
