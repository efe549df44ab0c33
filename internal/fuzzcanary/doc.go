// Package fuzzcanary holds a deliberately broken parser, behind the
// fuzzcanary build tag, that hack/fuzzcheck.sh fuzzes to prove the fuzz tier
// still fails on a real failing input and names it. Nothing imports it.
package fuzzcanary
