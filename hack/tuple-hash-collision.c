// A collision of CPython's 64-bit tuple hash between two 16-token blocks: the test data of
// tests/unit/test_llm_prefix_hash.py, which shows why the LLM engine's prefix cache keys its
// blocks by SHA-256 and not by Python's hash() (docs/security.md, "Shared KV cache between
// requests").
//
//   gcc -O3 -march=native -o /tmp/tuple-hash-collision hack/tuple-hash-collision.c
//   /tmp/tuple-hash-collision      # ~3 minutes on one core; prints the two blocks' first 7 ids
//
// Pollard rho with distinguished points over g(x) = hash(tuple(lanes(x) + TAIL)): lanes() cuts
// a 64-bit x into 7 token ids under 1,024; two chains that reach the same distinguished point
// are walked to where they merge, which gives two different x with the same hash. g is
// CPython 3.8+'s tuplehash (Objects/tupleobject.c) for small non-negative ints, whose hash is
// the int itself.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#define P1 11400714785074694791ULL
#define P2 14029467366897019727ULL
#define P5 2870177450012600261ULL
#define ROT(x) (((x) << 31) | ((x) >> 33))
static const uint64_t TAIL[9] = {5, 6, 7, 8, 9, 10, 11, 12, 13};
static void lanes(uint64_t x, uint64_t *l) { for (int i = 0; i < 6; i++) { l[i] = x & 1023; x >>= 10; } l[6] = x & 15; }
static uint64_t g(uint64_t x) {  // the hash of the 16-tuple chosen by x
  uint64_t l[7]; lanes(x, l); uint64_t acc = P5;
  for (int i = 0; i < 7; i++) { acc += l[i] * P2; acc = ROT(acc); acc *= P1; }
  for (int i = 0; i < 9; i++) { acc += TAIL[i] * P2; acc = ROT(acc); acc *= P1; }
  acc += 16 ^ (P5 ^ 3527539UL);
  return acc;
}
// only 64 bits of x matter; lanes() reads 64 bits
#define DPBITS 18
#define TB (1u << 24)
typedef struct { uint64_t dp, start, len; } E;
static E *tab;
int main(int argc, char **argv) {
  tab = calloc(TB, sizeof(E));
  uint64_t seed = 88172645463325252ULL;
  for (uint64_t chain = 0;; chain++) {
    seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
    uint64_t start = seed, x = start, len = 0;
    do { x = g(x); len++; } while ((x & ((1ULL << DPBITS) - 1)) && len < (40ULL << DPBITS));
    if (len >= (40ULL << DPBITS)) continue;
    uint64_t h = (x >> DPBITS) & (TB - 1);
    while (tab[h].len && tab[h].dp != x) h = (h + 1) & (TB - 1);
    if (!tab[h].len) { tab[h] = (E){x, start, len}; continue; }
    // two chains reach the same point: walk them in step to the merge
    uint64_t a = tab[h].start, la = tab[h].len, b = start, lb = len;
    while (la > lb) { a = g(a); la--; }
    while (lb > la) { b = g(b); lb--; }
    if (a == b) continue;  // one chain started on the other
    while (g(a) != g(b)) { a = g(a); b = g(b); }
    uint64_t l[7]; printf("A");
    lanes(a, l); for (int i = 0; i < 7; i++) printf(" %llu", (unsigned long long)l[i]);
    printf("\nB"); lanes(b, l); for (int i = 0; i < 7; i++) printf(" %llu", (unsigned long long)l[i]);
    printf("\nhash %llu chains %llu\n", (unsigned long long)g(a), (unsigned long long)chain);
    return 0;
  }
}
