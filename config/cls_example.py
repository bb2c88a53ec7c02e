# A text classifier on top of a model you pretrained (train.py) or fine-tuned (finetune_sft.py).
# Give the labelled data on the command line:
#   python finetune_cls.py config/cls_example.py --data=reviews.csv --text_column=review --label_column=sentiment
#   python finetune_cls.py --out_dir=out-cls --classify="You won a free prize, call now"
# Measured in the README ("Classification"): who wrote a Tang poem, among the five most prolific
# poets of tang-poems.jsonl, on a 4-layer trunk pretrained on the other poets' poems.
out_dir = 'out-cls'
base_dir = 'out'              # the train.py / finetune_sft.py run whose model becomes the trunk
base_ckpt = 'best.pt'         # its lowest val loss: a small corpus is overfitted by the end of a run
val_frac = 0.1                # stratified, seeded splits of --data, unless --val_data / --test_data
test_frac = 0.1
trainable = 'all'             # small trunks: fine-tune everything; try 'last' or 'lora' on big ones
learning_rate = 3e-4
min_lr = 3e-5
batch_size = 16
max_iters = 300               # ~4 epochs of 1,000 texts
warmup_iters = 20
dropout = 0.1                 # few labelled texts overfit quickly
eval_interval = 50
eval_examples = 500
log_interval = 10
