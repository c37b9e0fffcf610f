//go:build race

package router

// raceOn: the race detector is on (its shadow memory makes every
// allocation larger, so memory budgets are not judged).
const raceOn = true
