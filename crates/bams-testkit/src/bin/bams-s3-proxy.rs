//! `bams-s3-proxy LISTEN UPSTREAM`: the test kit's counting HTTP proxy as a program, so
//! `bench/s3.sh` can count the requests bams and restic make. Counters are served at
//! `GET /__bams_proxy/counts` and zeroed by `POST /__bams_proxy/reset`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bams-s3-proxy 127.0.0.1:PORT http://UPSTREAM:PORT");
        std::process::exit(2);
    };
    let Ok(addr) = listen.parse() else {
        eprintln!("bams-s3-proxy: {listen:?} is not an address like 127.0.0.1:9000");
        std::process::exit(2);
    };
    bams_testkit::faultproxy::FaultProxy::start_on(addr, upstream, 0).run_forever();
}
