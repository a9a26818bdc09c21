"""What the upstream scripts and evalkit's check step really wrote on the test bed (the server's
step-N.out / step-N.err files of one run, long paths shortened to /o and /d)."""

EXTRACT_OUT = (
    "Params:\n"
    "  context_length: 52\n"
    "  debug: False\n"
    "  extract_image_feats: True\n"
    "  extract_text_feats: True\n"
    "  image_data: /d/数据 path/datasets/Flickr30k-CN/lmdb/valid/imgs\n"
    "  img_batch_size: 32\n"
    "  precision: fp32\n"
    "  vision_model: RN50\n"
    "Loading vision model config from cn_clip/clip/model_configs/RN50.json\n"
    "Loading text model config from cn_clip/clip/model_configs/RBT3-chinese.json\n"
    "Preparing image inference dataset.\n"
    "Preparing text inference dataset.\n"
    "Begin to load model checkpoint from /d/数据 path/experiments/team/checkpoints/epoch_latest.pt.\n"
    "=> loaded checkpoint '/d/数据 path/experiments/team/checkpoints/epoch_latest.pt' (epoch 1 @ 100 steps)\n"
    "Make inference for texts...\n"
    "80 text features are stored in /o/服务器 outputs/valid_texts.txt_feat.jsonl\n"
    "Make inference for images...\n"
    "20 image features are stored in /o/服务器 outputs/valid_imgs.img_feat.jsonl\n"
    "Done!\n").encode()

EXTRACT_ERR = (
    "\r  0%|          | 0/3 [00:00<?, ?it/s]/tmp/srvvenv/lib/python3.11/site-packages/torch/utils/data/"
    "dataloader.py:759: UserWarning: 'pin_memory' argument is set as true but no accelerator is found, "
    "then device pinned memory won't be used.\n"
    "  super().__init__(loader)\n"
    "\r 33%|███▎      | 1/3 [00:11<00:22, 11.03s/it]\r 67%|██████▋   | 2/3 [00:23<00:11, 11.76s/it]"
    "\r100%|██████████| 3/3 [00:30<00:00,  9.59s/it]\r100%|██████████| 3/3 [00:30<00:00, 10.11s/it]\n"
    "\r  0%|          | 0/1 [00:00<?, ?it/s]\r100%|██████████| 1/1 [00:48<00:00, 48.52s/it]"
    "\r100%|██████████| 1/1 [00:48<00:00, 48.52s/it]\n").encode()

KNN_T2I_OUT = (
    "Params:\n"
    "  eval_batch_size: 32768\n"
    "  top_k: 10\n"
    "Begin to load image features...\n"
    "Finished loading image features.\n"
    "Begin to compute top-10 predictions for texts...\n"
    "Top-10 predictions are saved in /o/服务器 outputs/valid_predictions.jsonl\n"
    "Done!\n").encode()

KNN_T2I_ERR = ("\r0it [00:00, ?it/s]\r20it [00:00, 270.92it/s]\n"
               "\r0it [00:00, ?it/s]\r15it [00:00, 145.10it/s]\r30it [00:00, 138.54it/s]\r45it [00:00, 142.93it/s]"
               "\r61it [00:00, 147.40it/s]\r76it [00:00, 146.83it/s]\r80it [00:00, 145.96it/s]\n").encode()

KNN_I2T_ERR = ("\r0it [00:00, ?it/s]\r18it [00:00, 161.56it/s]\r43it [00:00, 192.86it/s]\r69it [00:00, 204.23it/s]"
               "\r80it [00:00, 200.09it/s]\n"
               "\r0it [00:00, ?it/s]\r14it [00:00, 130.40it/s]\r20it [00:00, 130.40it/s]\n").encode()

# evalkit's own check step: its facts for the laptop, then one line for a person
VERIFY_OUT = (
    'EVALKIT-FACTS {"images": {"path": "/d/数据 path/datasets/Flickr30k-CN/lmdb/valid/imgs", "count": 20, '
    '"problem": null}, "texts": {"path": "/d/数据 path/datasets/Flickr30k-CN/valid_texts.jsonl", "count": 80}}\n'
    "complete: image feature file and text feature file (20 images, 80 texts)\n").encode()
