//! nginx running the shipped site config (deploy/nginx), only what ties it to a machine replaced:
//! the upstream servers, the listening ports, the log and certificate paths.

use crate::net::{free_port, wait_for_port};
use crate::process::{is_root, Proc};
use crate::repo::repo_path;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What to run: which shipped files, in front of which servers.
pub struct Site<'a> {
    /// Scratch directory: the generated nginx.conf, pid, logs, temp files (and `tls.crt` /
    /// `tls.key` when `tls`).
    pub dir: &'a Path,
    /// Files under deploy/nginx, concatenated in order.
    pub files: &'a [&'a str],
    /// Ports of the learning-chat servers, in place of the `server appN` lines.
    pub upstreams: &'a [u16],
    /// With TLS the `ssl` listener gets the returned port and every plain listener a throwaway
    /// one; without, every listener gets the returned port.
    pub tls: bool,
}

/// Rewrites the shipped files for this machine; returns the http block's site text.
fn site_config(site: &Site, port: u16) -> String {
    let dir = site.dir.display();
    let mut text = String::new();
    let mut replaced_servers = false;
    for file in site.files {
        let shipped = std::fs::read_to_string(repo_path(&format!("deploy/nginx/{file}")))
            .unwrap_or_else(|e| panic!("deploy/nginx/{file}: {e}"));
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server app") {
                if !replaced_servers {
                    for upstream in site.upstreams {
                        text.push_str(&format!(
                            "    server 127.0.0.1:{upstream} max_fails=3 fail_timeout=10s;\n"
                        ));
                    }
                    replaced_servers = true;
                }
            } else if trimmed.starts_with("listen ") && site.tls && trimmed.contains("ssl") {
                text.push_str(&format!("    listen 127.0.0.1:{port} ssl http2;\n"));
            } else if trimmed.starts_with("listen ") && site.tls {
                text.push_str(&format!("    listen 127.0.0.1:{};\n", free_port()));
            } else if trimmed.starts_with("listen ") {
                text.push_str(&format!("    listen 127.0.0.1:{port};\n"));
            } else if trimmed.starts_with("access_log /var/log") {
                text.push_str(&format!("    access_log {dir}/access.log learning_chat;\n"));
            } else if trimmed.starts_with("ssl_certificate ") {
                text.push_str(&format!("    ssl_certificate {dir}/tls.crt;\n"));
            } else if trimmed.starts_with("ssl_certificate_key ") {
                text.push_str(&format!("    ssl_certificate_key {dir}/tls.key;\n"));
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        replaced_servers,
        "the shipped config has no `server appN` lines any more"
    );
    text
}

/// Runs nginx with the rewritten site and waits until it listens.
pub fn start(site: &Site) -> Proc {
    let port = free_port();
    run(site.dir, &site_config(site, port), port)
}

/// Runs nginx from `dir` with `http` (server blocks and directives of the `http` context, which
/// must listen on `port`) after checking the config with `nginx -t`, and waits until it listens.
pub fn run(dir: &Path, http: &str, port: u16) -> Proc {
    let user = if is_root() { "user root;\n" } else { "" };
    let main = format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http}}}\n",
        d = dir.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).expect("write nginx.conf");
    let nginx_bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("nginx is required: run ./scripts/test.sh, which installs it");
    let check = Command::new(nginx_bin)
        .args(["-t", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx -t");
    assert!(
        check.status.success(),
        "nginx rejects the generated config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(nginx_bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "nginx did not listen"
    );
    Proc::new(child, port)
}

/// nginx with deploy/nginx/learning-chat.conf in front of `servers`.
pub fn start_nginx(dir: &Path, servers: &[Proc]) -> Proc {
    let upstreams: Vec<u16> = servers.iter().map(|s| s.port).collect();
    start(&Site {
        dir,
        files: &["learning-chat.conf"],
        upstreams: &upstreams,
        tls: false,
    })
}
