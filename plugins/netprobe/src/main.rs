//! `netprobe ADDRESS…`: try to open a TCP connection to each address
//! (`127.0.0.1:8080`, or a name such as `localhost:8080`, which needs a
//! name lookup). Exits 0 if any connection was made, 1 if none was.
//! Built as a WASI preview 2 component, it shows that kiln gives such a
//! component no network.

fn main() {
    let mut connected = false;
    for addr in std::env::args().skip(1) {
        match std::net::TcpStream::connect(addr.as_str()) {
            Ok(_) => {
                println!("connected to {addr}");
                connected = true;
            }
            Err(e) => eprintln!("cannot connect to {addr}: {e}"),
        }
    }
    std::process::exit(if connected { 0 } else { 1 });
}
