fn main() {
    println!("brokk: not yet");
}
