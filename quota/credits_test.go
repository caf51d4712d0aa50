package quota

import "testing"

func TestCreditCost(t *testing.T) {
	t.Parallel()
	rates := []CreditRate{{Resource: "tokens", Credits: 1, Per: 1000}, {Resource: "messages", Credits: 2}}
	tests := []struct {
		name string
		uses []Use
		want int64
	}{
		{"nothing", nil, 0},
		{"one message", []Use{{Resource: "messages", Amount: 1}}, 2},
		{"a token rounds up", []Use{{Resource: "tokens", Amount: 1}}, 1},
		{"1000 tokens", []Use{{Resource: "tokens", Amount: 1000}}, 1},
		{"1001 tokens", []Use{{Resource: "tokens", Amount: 1001}}, 2},
		{"both", []Use{{Resource: "messages", Amount: 1}, {Resource: "tokens", Amount: 2500}}, 5},
		{"unpriced resource", []Use{{Resource: "files", Amount: 9}}, 0},
		{"keyed uses are not priced", []Use{{Resource: "messages", Amount: 1, Key: "k"}}, 0},
		{"huge saturates", []Use{{Resource: "messages", Amount: MaxLimit}}, MaxLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CreditCost(rates, tt.uses); got != tt.want {
				t.Fatalf("cost %d, want %d", got, tt.want)
			}
		})
	}
}
